"""The paper's experiments beyond single runs: the statistics they rest on live in experiments.stats."""
