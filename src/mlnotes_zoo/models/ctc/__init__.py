"""CTC speech recognition: the BiGRU and Conformer networks with the CTC loss (:mod:`.model`)
and greedy / prefix-beam decoding of their outputs (:mod:`.decoding`)."""

from mlnotes_zoo.models.ctc.decoding import (
    BLANK,
    collapse,
    greedy_decode,
    ids_to_text,
    prefix_beam_search,
    prefix_beam_search_one,
    text_to_ids,
)
from mlnotes_zoo.models.ctc.model import (
    DEFAULT_VOCAB,
    OBJECTIVE,
    BiGRULayer,
    ConformerCTC,
    ConvSubsampling,
    CTCOutput,
    CTCSpeechModel,
    DeepSpeechCTC,
    LogMelFrontend,
    SpecAugment,
    ctc_loss,
    length_mask,
    reverse_padded,
)

__all__ = ["DeepSpeechCTC", "ConformerCTC", "CTCSpeechModel", "CTCOutput", "LogMelFrontend",
           "SpecAugment", "ConvSubsampling", "BiGRULayer", "DEFAULT_VOCAB", "length_mask",
           "reverse_padded", "OBJECTIVE", "ctc_loss", "BLANK", "collapse", "greedy_decode",
           "prefix_beam_search", "prefix_beam_search_one", "ids_to_text", "text_to_ids"]
