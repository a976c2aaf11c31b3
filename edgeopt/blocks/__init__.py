"""Residual blocks of a graph (the engine of layer dropping): find them, score their removal, bypass and repair them."""
