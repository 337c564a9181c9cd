"""Where training runs: a Ray session (local or cluster) and Ray Train workers."""
