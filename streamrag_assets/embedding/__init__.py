"""The embed box: sentence-transformers turned into vectors (int8 ONNX or full precision), used by the documents
writer and the API alike."""
