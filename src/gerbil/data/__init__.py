"""The data's path before the model: corpus files → documents (corpus) → GPT-2 BPE ids (tokenizer) →
a token store on disk (store, written by prepare) → training examples (objectives) → packed, resumable
(B, T) batches (loader). Nothing here imports torch except the loader."""
