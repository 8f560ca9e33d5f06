from .retrieval import RetrievalModel, similarities  # noqa: F401


def build_model(cfg, num_classes: int) -> RetrievalModel:
    return RetrievalModel(cfg, num_classes)
