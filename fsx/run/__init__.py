"""One module per verb: a function cfg -> result that wires data, models, algorithms,
engine, evaluation and tracking together. `cfg` stops here: lower layers get plain values."""
