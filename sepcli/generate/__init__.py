"""Generation on the fixed ring cache: sampling, detokenisation, the decode loop and chat."""

from sepcli.generate.decode import Decoder, GenerateConfig, Token, generate
from sepcli.generate.sampling import SamplingConfig

__all__ = ["Decoder", "GenerateConfig", "SamplingConfig", "Token", "generate"]
