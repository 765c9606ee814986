"""`python -m ptq_cli` and the `ptq` console script."""

import signal
import sys


def run() -> None:
    """Start the command line; a Ctrl-C (or SIGTERM) while it is still importing onnx and
    onnxruntime ends as cleanly as one during the work."""
    def terminate(signum, frame):
        raise KeyboardInterrupt  # so that temporary outputs are removed as on Ctrl-C

    try:
        signal.signal(signal.SIGTERM, terminate)
        # inside the try: a Ctrl-C while onnx imports (~0.7 s) is caught
        from ptq_cli.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("ptq: interrupted; no output was written\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
