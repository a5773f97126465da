"""ES2 reproduction library: models, representations, ES2 loss and trainer, attacks, judges, evaluation."""

import warnings

# huggingface_hub's tqdm.auto warns, with an absolute path, when a notebook kernel lacks ipywidgets; our
# progress bars are plain text on purpose (es2_lib.progress), so that warning only pollutes published notebooks.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
