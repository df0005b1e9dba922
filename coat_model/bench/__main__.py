"""``python -m coat_model.bench speed|quality|merge|options|bounds|figures|poses [options]``: dispatch to the
benchmark's own ``main``."""

from __future__ import annotations

import sys

USAGE = ("usage: python -m coat_model.bench {speed,quality,merge,options,bounds,figures,poses} [options]   "
         "(each takes --help)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "speed":
        from .speed_cli import main as speed_main

        return speed_main(rest)
    if command == "quality":
        from .quality import main as quality_main

        return quality_main(rest)
    if command == "merge":
        from .shards import main as merge_main

        return merge_main(rest)
    if command == "options":
        from .options import main as options_main

        return options_main(rest)
    if command == "bounds":
        from .bounds import main as bounds_main

        return bounds_main(rest)
    if command == "figures":
        from .figures import main as figures_main

        return figures_main(rest)
    if command == "poses":
        from .poses import main as poses_main

        return poses_main(rest)
    print(f"unknown benchmark {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
