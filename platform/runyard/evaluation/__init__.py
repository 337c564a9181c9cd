"""Test-split metrics and the plots people look at: confusion matrix, fit, masks, learning curve."""
