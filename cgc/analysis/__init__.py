"""Reading results: a proposed cluster map from task affinity (`clustering`), the seesaw report of several
methods (`report`), what the gates of CGC-LoRA and its controls learned (`gate_report`), and mean ± std and the
paired bootstrap interval (`stats`)."""
