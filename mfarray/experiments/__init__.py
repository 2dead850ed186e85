"""The paper's study (§3) and the feature-learning study (§4) as functions returning xarray
Datasets (issues 11, 13).

One module per experiment::

    presets   Table 1 of the paper as Preset objects (kernel, hyper-parameters, lr, points)
    gains     train and test gains of frozen-kernel flows per preset
    spacing   Figure 3 right: nearest-neighbour FS distance between a test set and N train
              points, its power-law fit, and the points a kernel needs for a target gain
    noise     Figure 3 left: test points = train points + complex Gaussian noise (the paper's
              off-X variant and a variant projected back onto X), gain against distance
    feature_learning   the one-chart metric network trained with Adam / SGD on mini-batches,
              its empirical metric-NTK on a probe set at checkpoints (distance from Theta_0,
              alignment), kernel_evolution over widths (the lazy regime's rate)
    probe_kernel   the probe-set kernel statistics (upper row blocks, y^T Theta y = |J^T y|^2)
    after_kernel   freeze a trained network's empirical NTK and flow with it; the table of
              FS, initial NTK, analytic NTK, after-kernel and the network itself
    phi_kernel     the empirical metric-NTK of the chart-free phi-network, during training
    comparison     every model on one train/test split: g_FS, the paper's kernels, the analytic,
              initial and after-kernels, the one-chart network under Adam and under the kernel
              flows' integrator (network_flow), the phi-network and the phi-kernel (issue 13)

Each takes point sets (lazy or computed) and settings, and returns a Dataset that records
them; plots (:mod:`mfarray.plots`) and the report read nothing else.
"""
