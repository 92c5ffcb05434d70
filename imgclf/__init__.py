"""imgclf: image URL lists to a trained, evaluated torchvision classifier.

Floors, each importing only from those below it (docs/architecture.md): common modules →
acquire (no torch), dataset → model (the trained-model contract) → train (the only Catalyst
user), predict → evaluate → commands. Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
# The product token site owners see, and name in X-Robots-Tag ("imgclf: noai").
USER_AGENT_TOKEN = "imgclf"
# Every HTTP request imgclf makes (the downloader, --predict on URLs) sends this.
USER_AGENT = (
    f"{USER_AGENT_TOKEN}/{__version__} "
    "(image dataset downloader and classifier; downloads honour X-Robots-Tag)"
)
