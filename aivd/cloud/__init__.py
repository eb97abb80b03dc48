"""The cloud analysis tier: says what each candidate region is, how bad, why, and what to do.

`Analyzer` is the interface every backend implements (built-in model, HTTP client of the cloud service, and
multimodal LLMs); `DefectAnalysis` is what each returns per region.
"""
