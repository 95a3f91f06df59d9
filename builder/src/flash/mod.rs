//! Writing images to SD cards and USB sticks, safely and verified.
