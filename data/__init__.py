"""Data sources (synthetic scenes, KITTI, Cityscapes, CamVid, BDD100K) in one example schema."""
