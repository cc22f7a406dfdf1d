"""LightningDataModules: embedded offline defaults and real-dataset loaders."""

from mlnotes_zoo.data.base import BadDataError, DataModule, DataNotFoundError
from mlnotes_zoo.data.cifar10 import CIFAR10DataModule
from mlnotes_zoo.data.coco import CocoDataModule, PennFudanDataModule
from mlnotes_zoo.data.digits import DigitsDataModule
from mlnotes_zoo.data.mnist import FashionMNISTDataModule, MNISTDataModule
from mlnotes_zoo.data.parity import ParityDataModule
from mlnotes_zoo.data.seq2seq_numbers import SeqNumbersDataModule
from mlnotes_zoo.data.shapes import ShapesDataModule
from mlnotes_zoo.data.speech import (
    AudioFolderDataModule,
    LibriSpeechDataModule,
    SpeechCommandsDataModule,
)
from mlnotes_zoo.data.spoken_symbols import SpokenSymbolsDataModule
from mlnotes_zoo.data.text import TextDataModule

__all__ = ["BadDataError", "DataNotFoundError", "DataModule",
           "ShapesDataModule", "CocoDataModule", "PennFudanDataModule",
           "SpokenSymbolsDataModule", "LibriSpeechDataModule",
           "SpeechCommandsDataModule", "AudioFolderDataModule",
           "DigitsDataModule", "MNISTDataModule", "FashionMNISTDataModule", "CIFAR10DataModule",
           "ParityDataModule", "SeqNumbersDataModule", "TextDataModule"]
