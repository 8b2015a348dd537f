"""`python -m edgebroker` runs the broker, as the `edgebroker` command does;
`python -m edgebroker pub ...`, `... sub ...` and `... passwd ...` run edgebroker-pub, edgebroker-sub and
edgebroker-passwd."""
import sys


def _run() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("pub", "sub", "passwd"):
        if sys.argv[1] == "pub":
            from .cli.pub import main as tool
        elif sys.argv[1] == "sub":
            from .cli.sub import main as tool
        else:
            from .cli.passwd import main as tool
        return tool(sys.argv[2:])
    from .cli.broker import main
    return main()


sys.exit(_run())
