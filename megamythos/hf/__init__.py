"""Hugging Face format: an exported directory that ``transformers`` loads with ``trust_remote_code=True``.

``configuration_megamythos`` and ``modeling_megamythos`` wrap the library's config and model; ``export`` writes
them, with the library modules they import (imports made relative), the weights and the tokenizer, into one
directory; ``lm_eval_data`` writes the local data of the tasks in ``lm_eval_tasks/``. Importing this package
imports nothing; its modules need the ``hf`` extra (transformers).
"""
