"""chaptering: split video transcripts into titled chapters, and keep improving from what users correct."""
