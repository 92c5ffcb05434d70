"""Similar images and new classes without retraining: embeddings, FAISS index, prototypes."""
