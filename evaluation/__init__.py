"""Statistics for reproducing the benchmark protocol: bootstrap intervals over documents for strict span P/R/F1
(`evaluation.intervals`), Pearson and Spearman correlation (`evaluation.correlation`) and the paper's reported
figures (`evaluation.paper`). See docs/method.md (evaluation).
"""
