"""crawd: Cross-Attention-based Weight Decay (Haque et al., EMNLP Findings 2025) for bias mitigation."""

from crawd.adapted import AdaptedModel
from crawd.block import CrossAttentionBlock, topk_decay
from crawd.config import CrawdConfig
from crawd.model import CrawdModel, adapt, wrap
from crawd.self_decay import SelfDecayModel
from crawd.sensitive import GROUPS
from crawd.serialization import AutoCrawdModel, load

__version__ = "0.1.0"
__all__ = ["AdaptedModel", "AutoCrawdModel", "CrawdConfig", "CrawdModel", "CrossAttentionBlock", "GROUPS",
           "SelfDecayModel", "adapt", "load", "topk_decay", "wrap"]
