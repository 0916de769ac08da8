"""voicebridge: a real-time speech-to-speech relay between voice clients and Azure AI Voice Live."""

__version__ = "0.3.0"
