"""The search page of app.py: gallery and ranking (gallery.py), THI step by step (thi_steps.py), the Gradio page
(page.py) and putting them together from the command line (server.py).  Only page.py and server.py import Gradio."""
