"""Plain nn.Modules. Each takes ``input_shape`` and ``num_outputs`` (filled in from the
dataset) and typed keyword arguments that a pipeline's ``model:`` section sets."""
