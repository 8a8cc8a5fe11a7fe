"""Automated interpretability (the paper's protocol, after Bills et al. 2023).

sampling    the explainer/held-out split by document; one streaming scan of the cache: unit statistics,
            example windows, proxy counts
baseline    the offline explainer/simulator/judge (token and context statistics)
llm         the same roles played by any OpenAI-compatible chat endpoint
logits      logit effects of a unit's output direction
proxies     hypothesis detectors (regex or callable) and their token labels
scoring     correlations, a judge's detection and fuzzing scores, summaries, the bootstrap comparison
dictionary  all of it for one dictionary and its subject model's neurons
export      its features as Neuronpedia feature JSON and as EleutherAI delphi's latent cache
"""

from monosemantic.interpret.baseline import Baseline, Explanation
from monosemantic.interpret.dictionary import Result, interpret_dictionary
from monosemantic.interpret.llm import ChatClient, LLMBackend, api_key
from monosemantic.interpret.proxies import detector

__all__ = ["Baseline", "Explanation", "Result", "interpret_dictionary", "ChatClient", "LLMBackend", "api_key", "detector"]
