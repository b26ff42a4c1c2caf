"""The model catalog: limits, abilities and prices (``models``), and what a request costs (``prices``)."""

from .models import CAPABILITIES, Catalog, ModelInfo
from .prices import PRICES, Price, cost_of

__all__ = ["CAPABILITIES", "PRICES", "Catalog", "ModelInfo", "Price", "cost_of"]
