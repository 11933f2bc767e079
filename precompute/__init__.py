"""convscope precompute: load real models, inventory their layers, run the analyses, cache results.

Modules that the web server imports (``settings``, ``cache``, ``names``) never import torch.
"""

__version__ = "0.1.0"
