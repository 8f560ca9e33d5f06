"""Facts several layers share, kept in one place: the data side and the model side both read them."""

# CLIP's pixel statistics (RGB, in [0, 1] units): its image encoder was pre-trained on inputs normalised with
# these; the model normalises with them and the published random erasing fills with PIXEL_MEAN after that
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
