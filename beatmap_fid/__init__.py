"""beatmap_fid: embeddings, Fréchet distance, FAISS search and k-NN for beatmaps, images, audio."""

from beatmap_fid._version import __version__

__all__ = ["__version__"]
