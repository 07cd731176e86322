"""The ground floor: what every layer above may use and nothing here imports from above.

``errors`` (the user-mistake exceptions the CLI turns into one line), ``callbacks`` (``StageFn``: how long
commands report their stages), ``files`` (atomic writes, folder marks and locks), ``env`` (device, threads,
package versions), ``interval`` (Wilson 95% intervals), ``registry`` (name -> factory), ``distributed``
(torchrun), ``ort`` (an exported classifier under onnxruntime), ``version`` and ``package`` (the class of the
``akd_edge`` module). Import the submodule you need; nothing is imported here.
"""
