"""LLM-as-a-judge: pairwise win rates (AlpacaEval), length control, MT-Bench."""
