"""Ready-made models for the sequence shapes, each with ``fit``, ``evaluate``, ``predict``,
``save`` and ``load``:

=========================  =====================  ==========================================
model                      shape                  use
=========================  =====================  ==========================================
:class:`LanguageModel`     many-to-many           next token; text generation (TBPTT)
:class:`SequenceClassifier` many-to-one           sentiment-style labels
:class:`SequenceRegressor` many-to-one / -many    forecasting, per-step regression
:class:`Seq2Seq`           many-to-many (enc-dec) translation-style
:class:`OneToManyGenerator` one-to-many           captioning-style, from a vector
=========================  =====================  ==========================================

``Model.load(path)`` reads any of them back from a checkpoint.
"""
from ._base import History, Model
from .language import LanguageModel
from .seq2seq import OneToManyGenerator, Seq2Seq
from .sequence import SequenceClassifier, SequenceRegressor

__all__ = ["Model", "History", "LanguageModel", "SequenceClassifier", "SequenceRegressor",
           "Seq2Seq", "OneToManyGenerator"]
