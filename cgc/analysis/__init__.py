"""Reading results: a proposed cluster map from task affinity (`clustering`), the seesaw report of several
methods (`report`), what CGC-LoRA's gates learned (`gate_report`), and mean ± std and the paired bootstrap
interval (`stats`)."""
