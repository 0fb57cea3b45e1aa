"""The recipes' config layer: YAML and overrides to typed, validated sections (`config`; the file read by
`yaml_file`, the values range-checked by `value_checks`) and their documented keys (`key_table`), inputs checked
before anything starts (`inputs`: the DeepSpeed JSON, data, output_dir), combinations a machine cannot run
(`compatibility`), a run grown from a trained adapter (`growth`), the finetune.py runs another recipe starts
(`child_runs`), and how a recipe refuses (`errors`). Library modules never import it."""

from cgc.recipe.config import RecipeConfig, load_recipe_config
from cgc.recipe.errors import ConfigError, RecipeConfigError, error_exit

__all__ = ["ConfigError", "RecipeConfig", "RecipeConfigError", "error_exit", "load_recipe_config"]
