"""The ship stage: a run's model made usable by others. card.py writes the Hugging Face model card
(<model folder>/README.md) after training, eval and merge; publish.py uploads the adapter or the merged model with
its card to the hub (`recipe publish`)."""
