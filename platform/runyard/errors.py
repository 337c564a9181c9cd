"""The one exception type users see: the CLI prints it as one line and exits 2."""


class RunyardError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The message names the file, the key and what is allowed, e.g.
    ``pipelines/mnist1d_cnn.yaml: recipe.lr: must be > 0 (got -0.1)``.
    """

    exit_code = 2


def summary_line(text: str, limit: int = 300) -> str:
    """The line of a command's output (or an exception's text) worth showing: the last one
    that mentions an error, else the last one."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:limit]


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception in one line: its message's first line, or its type when it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
