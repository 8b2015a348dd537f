"""`python -m edgebroker` runs the broker, as the `edgebroker` command does;
`python -m edgebroker pub ...` and `python -m edgebroker sub ...` run edgebroker-pub and edgebroker-sub."""
import sys


def _run() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("pub", "sub"):
        if sys.argv[1] == "pub":
            from .cli.pub import main as tool
        else:
            from .cli.sub import main as tool
        return tool(sys.argv[2:])
    from .cli.broker import main
    return main()


sys.exit(_run())
