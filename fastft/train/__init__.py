"""The thin trainer: fine-tune, evaluate, predict.

``fastft.train(...)`` is :func:`fastft.train.trainer.train`; this package forwards calls to it.
"""

from fastft import callable_package

callable_package(__name__, "fastft.train.trainer:train")
