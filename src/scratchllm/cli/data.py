"""``scratchllm data``: list the registered datasets, fetch one, or show its paths."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="list, fetch or locate the registered datasets",
                              description="Registered public datasets, checked by sha256 and cached.")
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)
    sub.add_parser("list", help="registered datasets and whether they are available here")
    for action, text in (("fetch", "download a dataset into the cache (or find it locally)"),
                         ("path", "print the local path of each file of a dataset")):
        a = sub.add_parser(action, help=text, description=text)
        a.add_argument("name", help="dataset name (see `scratchllm data list`)")
    for a in sub.choices.values():
        a.add_argument("--data-dir", default=None, help="folder holding NAME/FILE copies of the datasets")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import data
    if args.action == "list":
        _list(data, args.data_dir)
    elif args.action == "fetch":
        for name, path in data.resolve(args.name, args.data_dir).items():
            print(f"{name}: {path}")
    else:
        for path in data.resolve(args.name, args.data_dir, download_ok=False).values():
            print(path)
    return 0


def _list(data, data_dir) -> None:
    from ..errors import ScratchError
    print(f"cache: {data.cache_dir()}")
    for name, ds in sorted(data.DATASETS.items()):
        try:
            data.resolve(name, data_dir, download_ok=False)
            where = "available"
        except ScratchError:
            where = "not fetched"
        print(f"{name:16s} {where:12s} {ds.description}")
