"""The MLflow pyfunc model, logged as code (MLflow's "models from code"): MLflow runs this file to
build the model, and the weights come from the model file logged with it. Nothing is unpickled.

Input: a DataFrame with an `image` column, one PNG or JPEG file's bytes per row, any size (resized to
32x32). Output: one row per image, the predicted `class`, then the probability of each class
(serving/schema.py).
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from cifar_pipeline.engine.device import pick_device
from cifar_pipeline.serving.classifier import MODEL_FILE_ARTIFACT, ImageClassifier, ImageInputError
from cifar_pipeline.serving.schema import decode_column


class CifarClassifierModel(PythonModel):
    def load_context(self, context) -> None:
        self.classifier = ImageClassifier.from_file(context.artifacts[MODEL_FILE_ARTIFACT], pick_device("auto"))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        try:
            return self.classifier.frame(self.classifier.probabilities(decode_column(model_input)))
        except ImageInputError as exc:  # a 400 answer with this message when served
            raise mlflow.MlflowException.invalid_parameter_value(str(exc)) from None


mlflow.models.set_model(CifarClassifierModel())
