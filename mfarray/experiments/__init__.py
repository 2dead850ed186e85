"""The paper's study (§3) as functions returning xarray Datasets (issue 11).

One module per experiment::

    presets   Table 1 of the paper as Preset objects (kernel, hyper-parameters, lr, points)
    gains     train and test gains of frozen-kernel flows per preset
    spacing   Figure 3 right: nearest-neighbour FS distance between a test set and N train
              points, its power-law fit, and the points a kernel needs for a target gain
    noise     Figure 3 left: test points = train points + complex Gaussian noise (the paper's
              off-X variant and a variant projected back onto X), gain against distance

Each takes point sets (lazy or computed) and settings, and returns a Dataset that records
them; plots (:mod:`mfarray.plots`) and the report read nothing else.
"""
