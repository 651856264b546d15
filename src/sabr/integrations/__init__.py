"""sabr in other tools' stacks: :mod:`.tensorboard` (``sabr run --log tensorboard``) and :mod:`.lightning`
(:class:`~sabr.integrations.lightning.SABRCallback`). Each needs its pip extra (``torch-sabr[tensorboard]``,
``torch-sabr[lightning]``) and is imported only when used."""
