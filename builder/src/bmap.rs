//! bmap files (bmaptool format 2.0): which ranges of an image hold data.
