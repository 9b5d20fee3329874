"""megamythos: DeepSpeed pretraining of a recurrent-depth Mixture-of-Experts transformer."""
from setuptools import find_packages, setup

# Hugging Face export (transformers) and lm-evaluation-harness; lm-eval's hf model imports accelerate
HF = ["transformers>=5.20,<6", "lm-eval>=0.4.9", "accelerate>=1.0"]

setup(
    name="megamythos",
    version="0.1.0",
    description="DeepSpeed/Megatron-style pretraining for recurrent-depth MoE transformers "
                "(Prelude -> looped block -> Coda)",
    # ds_configs/ at the repository root is also the package's megamythos/ds_configs: the trainer's and the
    # launcher's default templates (megamythos.runtime.locations), which an installed package has no checkout for
    packages=[*find_packages(include=["megamythos", "megamythos.*"]), "megamythos.ds_configs"],
    package_dir={"megamythos.ds_configs": "ds_configs"},
    package_data={"megamythos": ["py.typed"], "megamythos.ds_configs": ["*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",
        "deepspeed>=0.19.8,<0.20",
        "sentencepiece>=0.2",
        "datasets>=2.18",
        "tensorboard>=2.14",
        "numpy>=1.24",
        "tqdm>=4.64",
        "safetensors>=0.4",
        "matplotlib>=3.7",
        "zstandard>=0.22",
        "pyarrow>=14",
        "protobuf>=3.20",
        "psutil>=5.9",
    ],
    # the command lines; `python -m megamythos.<package>.<module>` and the scripts in data_prep/, tokenizer/ and
    # launchers/ run the same functions
    entry_points={"console_scripts": [
        "megamythos-pretrain = megamythos.training.pretrain:main",
        "megamythos-plan = megamythos.planning.plan:main",
        "megamythos-evaluate = megamythos.inference.evaluate:main",
        "megamythos-generate = megamythos.inference.generate:main",
        "megamythos-export = megamythos.checkpoint.export:main",
        "megamythos-lm-eval-data = megamythos.hf.lm_eval_data:main",
        "megamythos-study = megamythos.research.study:main",
        "megamythos-train-tokenizer = megamythos.data.cli:train_tokenizer_main",
        "megamythos-preprocess = megamythos.data.cli:preprocess_main",
        "megamythos-inspect-dataset = megamythos.data.cli:inspect_main",
        "megamythos-merge-datasets = megamythos.data.cli:merge_main",
        "megamythos-build-default-corpus = megamythos.data.cli:default_corpus_main",
    ]},
    extras_require={
        "hf": HF,
        "dev": ["pytest>=7.4", "pytest-xdist>=3.5", "ruff>=0.6", *HF],  # the tests cover the hf export
        "cuda": ["flash-attn>=2.5"],
    },
)
