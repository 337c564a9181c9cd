"""The one exception type users see: the CLI prints it as one line and exits 2."""


class RunyardError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The message names the file, the key and what is allowed, e.g.
    ``pipelines/mnist1d_cnn.yaml: recipe.lr: must be > 0 (got -0.1)``.
    """

    exit_code = 2
