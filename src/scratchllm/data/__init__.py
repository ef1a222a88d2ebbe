"""Data: corpora, token streams, batches, parallel sentence pairs, named datasets."""
from .batches import get_batch, length_grouped_batches, pad_batch, random_batches, train_val_split
from .corpus import BUILTIN, builtin_text, load_text, read_text_file, read_text_folder
from .parallel import MULTI30K_SPLITS, load_parallel, multi30k, read_lines
from .registry import DATASETS, Dataset, RemoteFile, cache_dir, dataset_file, get_dataset, resolve
from .token_bin import read_token_bin, read_token_meta, write_token_bin

__all__ = [
    "get_batch", "random_batches", "train_val_split", "pad_batch", "length_grouped_batches",
    "BUILTIN", "builtin_text", "load_text", "read_text_file", "read_text_folder",
    "MULTI30K_SPLITS", "load_parallel", "multi30k", "read_lines",
    "DATASETS", "Dataset", "RemoteFile", "cache_dir", "dataset_file", "get_dataset", "resolve",
    "write_token_bin", "read_token_bin", "read_token_meta",
]
