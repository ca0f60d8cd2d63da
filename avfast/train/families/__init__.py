"""One module per model family, each defining ``FAMILY`` (see ``avfast.train.family``)."""
