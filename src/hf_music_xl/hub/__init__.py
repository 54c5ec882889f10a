"""The Hugging Face Hub: push a trained model (``push``) with its card (``model_card``), publish the app as a Space
(``space``), and turn the Hub client's failures into one line a person can act on (``errors``)."""
