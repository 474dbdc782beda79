"""lorasetup: will this kohya-ss LoRA training setup survive an hour-long run?"""

__version__ = "0.1.0"
