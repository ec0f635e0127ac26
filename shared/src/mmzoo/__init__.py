"""mmzoo: the shared library of the mmzoo workspace.

Submodules are imported explicitly (``from mmzoo.video import VideoReader``); importing ``mmzoo`` itself does no work.
"""

__version__ = "0.1.0"
