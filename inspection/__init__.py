"""Looking inside a model (``salbench inspect``): filters, activations, maximally activating
patches, class model visualization, embeddings and Network Dissection.

Pure computations, one module each, tensors in and out on the input's device:

* :mod:`~salbench.inspection.receptive_field`: each layer's receptive field (size, jump, start)
  traced through the network's convolutions, pools and paddings;
* :mod:`~salbench.inspection.layers`: the layers a forward pass runs, the first convolution,
  the "first" / "target" layer names, activation capture for several layers at once;
* :mod:`~salbench.inspection.patches`: the running top-k of a layer's units over a dataset and
  the receptive-field crops of the winners (Zeiler & Fergus 2014);
* :mod:`~salbench.inspection.class_model`: class model visualization by gradient ascent
  (Simonyan et al. 2013), with the jitter / blur regularizers of later work;
* :mod:`~salbench.inspection.embeddings`: penultimate features, nearest neighbours in feature
  and pixel space, neighbour label agreement, t-SNE (van der Maaten & Hinton 2008);
* :mod:`~salbench.inspection.dissection`: Network Dissection (Bau et al. 2017): the top-quantile
  threshold of every unit over the dataset and the IoU of its thresholded maps with concept masks.

The job (:mod:`~salbench.inspection.job`) streams the dataset through the model once for the
first group of accumulators and once more for the dissection's IoU, checkpointing as it goes;
the figures and the page are drawn by :mod:`salbench.reports.inspection`.
"""
